"""Score scale, rubric, templates and the model config (docs/design.md §3–4)."""

import pytest
import torch

from zreward_deploy.config import (
    HALF_POINT_SCALE,
    Dimension,
    Rubric,
    ScoreScale,
    ZRewardConfig,
    fill_template,
)
from zreward_deploy.errors import InvalidModelError, UnknownDimensionError, ZRewardInputError
from zreward_deploy.tokenization import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_soft_target_two_hot_between_values():
    scale = ScoreScale()
    t = scale.soft_target([3.5, 1.0, 5.0, 2.25])
    expected = torch.tensor(
        [
            [0, 0, 0.5, 0.5, 0],  # 3.5: half on 3, half on 4
            [1, 0, 0, 0, 0],  # an exact value is one-hot
            [0, 0, 0, 0, 1],  # the top of the scale uses the last interval
            [0, 0.75, 0.25, 0, 0],  # 2.25 = 0.75*2 + 0.25*3
        ]
    )
    torch.testing.assert_close(t, expected)
    # the target's expectation is the label
    torch.testing.assert_close(t @ scale.values_tensor(), torch.tensor([3.5, 1.0, 5.0, 2.25]))


def test_soft_target_on_nine_value_scale_is_one_hot_for_half_points():
    t = HALF_POINT_SCALE.soft_target(torch.tensor([3.5, 4.0]))
    assert t.shape == (2, 9)
    assert t[0, 5] == 1 and t[1, 6] == 1 and t.sum() == 2


@pytest.mark.parametrize("bad", [0.5, 5.5, float("nan"), float("inf")])
def test_soft_target_rejects_labels_off_the_scale(bad):
    with pytest.raises(ZRewardInputError):
        ScoreScale().soft_target([3.0, bad])


def test_scale_validation():
    with pytest.raises(ZRewardInputError, match="ascending"):
        ScoreScale(values=(1, 3, 2), tokens=("1", "3", "2"))
    with pytest.raises(ZRewardInputError, match="pair up"):
        ScoreScale(values=(1, 2), tokens=("1",))
    with pytest.raises(ZRewardInputError, match="distinct"):
        ScoreScale(values=(1, 2), tokens=("1", "1"))
    assert ScoreScale().range == 4.0


def test_score_tokens_must_be_single_tokens(tokenizer):
    ids = ScoreScale().token_ids(tokenizer)
    assert len(set(ids)) == 5
    assert [tokenizer.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]
    assert len(set(HALF_POINT_SCALE.token_ids(tokenizer))) == 9
    # "3.5" is three tokens in a digit-splitting tokenizer: refused with the token named
    with pytest.raises(InvalidModelError, match=r"'3\.5'.*single token"):
        ScoreScale(values=(3.0, 3.5), tokens=("3", "3.5")).token_ids(tokenizer)


def test_rubric_defaults_selection_and_weights():
    rubric = Rubric()
    assert rubric.names == ["alignment", "realism", "aesthetics", "plausibility"]
    assert all(d.instruction for d in rubric.dimensions)
    torch.testing.assert_close(rubric.weights(), torch.full((4,), 0.25))
    weighted = Rubric((Dimension("a", "x", 3.0), Dimension("b", "y", 1.0)))
    torch.testing.assert_close(weighted.weights(), torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(weighted.weights(["b"]), torch.tensor([1.0]))
    assert [d.name for d in rubric.select(["realism", "alignment"])] == ["realism", "alignment"]
    with pytest.raises(UnknownDimensionError, match="sharpness"):
        rubric.select(["sharpness"])
    with pytest.raises(UnknownDimensionError, match="twice"):
        rubric.select(["realism", "realism"])
    with pytest.raises(ZRewardInputError, match="repeat"):
        Rubric((Dimension("a", "x"), Dimension("a", "y")))


def test_fill_template_leaves_braces_in_prompts_alone():
    out = fill_template('say "{prompt}" for {name}', prompt="a {weird} prompt", name="realism")
    assert out == 'say "a {weird} prompt" for realism'


def test_config_round_trip(tmp_path):
    config = ZRewardConfig(
        text_config={"model_type": "llama", "hidden_size": 32, "num_attention_heads": 2},
        score_scale=HALF_POINT_SCALE.to_dict(),
        rubric=[{"name": "realism", "instruction": "is it real", "weight": 2.0}],
        templates={"student_suffix": "{name}?"},
        score_token_ids=list(range(9)),
    )
    config.save_pretrained(tmp_path)
    loaded = ZRewardConfig.from_pretrained(tmp_path)
    assert type(loaded.text_config).__name__ == "LlamaConfig"
    assert loaded.text_config.hidden_size == 32
    assert type(loaded.vision_config).__name__ == "SiglipVisionConfig"
    assert loaded.get_score_scale() == HALF_POINT_SCALE
    assert loaded.get_rubric().names == ["realism"]
    assert loaded.templates["student_suffix"] == "{name}?"
    assert loaded.templates["student_prompt"]  # defaults fill the rest


def test_config_rejects_bad_fields():
    with pytest.raises(InvalidModelError, match="unknown template"):
        ZRewardConfig(templates={"nonsense": "x"})
    with pytest.raises(InvalidModelError, match="score_token_ids"):
        ZRewardConfig(score_token_ids=[1, 2])
    with pytest.raises(InvalidModelError, match="score_head_backend"):
        ZRewardConfig(score_head_backend="cuda")
