"""PromptIQA math and network: ISPP sampling, RS/RF (Eq. 4), in-batch prompting, loading, ISPP scoring."""
import numpy as np
import pytest
import torch

from rayiqa.config.promptiqa import PromptIQAModelConfig
from rayiqa.methods.prompt_iqa import (
    InBatchPromptIQA,
    augment_scores,
    in_batch_loss,
    in_batch_predictions,
    in_batch_prompt_index,
    interval_sampling,
    random_flipping,
    random_sampling,
    random_scaling,
    score_with_ispp,
)
from rayiqa.models.promptiqa import PlainRegressor, PromptIQA, load_promptiqa, to_batch

CFG = PromptIQAModelConfig(dim=16, num_heads=2, prompt_depth=1, ispp_depth=1, fusion_depth=2, image_size=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PromptIQA(CFG).eval()


def test_interval_sampling_takes_min_evenly_spaced_and_max():
    scores = np.random.default_rng(3).permutation(100).astype(float)
    picked = scores[interval_sampling(scores, 10)]
    assert picked.tolist() == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert interval_sampling(np.array([0.3, 0.9, 0.1, 0.5, 0.7]), 3).tolist() == [2, 3, 1]


def test_sampling_rejects_more_isps_than_images():
    with pytest.raises(ValueError, match="k=6"):
        interval_sampling(np.zeros(5), 6)
    with pytest.raises(ValueError, match="k=6"):
        random_sampling(5, 6, np.random.default_rng(0))


def test_random_sampling_is_distinct():
    picks = random_sampling(20, 10, np.random.default_rng(0))
    assert len(set(picks.tolist())) == 10 and picks.min() >= 0 and picks.max() < 20


def test_random_scaling_paper_divides_by_max():
    out = random_scaling(torch.tensor([0.2, 0.4, 0.5]))
    assert torch.allclose(out, torch.tensor([0.4, 0.8, 1.0]))


def test_random_scaling_code_divides_by_uniform_between_max_and_one():
    s = np.random.default_rng(7).uniform(0.5, 1.0)  # the code's s ~ U(max(S), 1), drawn independently
    out = random_scaling(torch.tensor([0.2, 0.4, 0.5]), "code", np.random.default_rng(7))
    assert torch.allclose(out, torch.tensor([0.2, 0.4, 0.5]) / s)
    assert 0.5 < float(out.max()) <= 1.0


def test_random_scaling_needs_positive_max():
    with pytest.raises(ValueError, match="positive maximum"):
        random_scaling(torch.tensor([0.0, 0.0]))


def test_random_flipping_is_alpha_minus_s():
    assert torch.allclose(random_flipping(torch.tensor([0.2, 0.7])), torch.tensor([0.8, 0.3]))
    assert torch.allclose(random_flipping(torch.tensor([1.0, 4.0]), alpha=5.0), torch.tensor([4.0, 1.0]))


def test_augment_applies_scaling_then_flipping():
    rng = np.random.default_rng(0)
    both = augment_scores(torch.tensor([0.2, 0.4, 0.5]), rng, p_scale=1.0, p_flip=1.0)
    assert torch.allclose(both, torch.tensor([0.6, 0.2, 0.0]))
    same = augment_scores(torch.tensor([0.2, 0.4, 0.5]), rng, p_scale=0.0, p_flip=0.0)
    assert torch.equal(same, torch.tensor([0.2, 0.4, 0.5]))


def test_augment_probabilities():
    rng = np.random.default_rng(1)
    scores = torch.tensor([0.1, 0.5])
    outs = [augment_scores(scores, rng, p_scale=0.5, p_flip=0.1) for _ in range(4000)]
    scaled = np.mean([abs(float(o.max() - o.min()) - 0.8) < 1e-4 for o in outs])  # RS doubles the spread 0.4
    flipped = np.mean([float(o[0]) > float(o[1]) for o in outs])
    assert abs(scaled - 0.5) < 0.04 and abs(flipped - 0.1) < 0.02


def test_in_batch_prompt_index_lists_the_others():
    assert in_batch_prompt_index(4).tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    with pytest.raises(ValueError):
        in_batch_prompt_index(1)


def test_in_batch_predictions_equal_one_ispp_per_image(model):
    torch.manual_seed(1)
    images, scores = torch.rand(5, 3, 32, 32), torch.rand(5)
    batched = in_batch_predictions(model, images, scores)
    for i in range(5):
        others = [j for j in range(5) if j != i]
        alone = model(images[i:i + 1], images[others], scores[others])
        assert torch.allclose(batched[i], alone[0], atol=1e-5)


def test_in_batch_loss_is_l1_against_augmented_targets(model):
    torch.manual_seed(2)
    images, scores = torch.rand(4, 3, 32, 32), torch.tensor([0.1, 0.2, 0.3, 0.4])
    loss, pred, target = in_batch_loss(InBatchPromptIQA(model), images, scores, np.random.default_rng(0), 1.0, 1.0)
    assert torch.allclose(target, torch.tensor([0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(loss, (pred - target).abs().mean())


def test_same_image_scores_differently_under_inverted_ispp(model):
    torch.manual_seed(3)
    image, ispp = torch.rand(1, 3, 32, 32), torch.rand(10, 3, 32, 32)
    scores = torch.linspace(0, 1, 10)
    plain = score_with_ispp(model, image, ispp, scores)
    inverted = score_with_ispp(model, image, ispp, 1 - scores)
    assert abs(float(plain - inverted)) > 1e-6


def test_score_with_ispp_chunks_match_one_forward(model):
    torch.manual_seed(4)
    images, ispp, scores = torch.rand(5, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3)
    assert torch.allclose(score_with_ispp(model, images, ispp, scores, batch_size=2), model(images, ispp, scores), atol=1e-6)


def test_outputs_in_unit_interval_and_plain_regressor_shape(model):
    out = model(torch.rand(3, 3, 40, 48), torch.rand(2, 3, 32, 32), torch.rand(2))
    assert out.shape == (3,) and bool(((out > 0) & (out < 1)).all())
    assert PlainRegressor(CFG)(torch.rand(3, 3, 32, 32)).shape == (3,)


def test_load_released_ddp_state_dict(model, tmp_path):
    released = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "prompt_num": 10}
    torch.save(released, tmp_path / "best_model.pth.tar")
    loaded = load_promptiqa(str(tmp_path / "best_model.pth.tar"), CFG)
    x, ispp, s = torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3)
    assert torch.equal(loaded(x, ispp, s), model(x, ispp, s))


def test_load_other_architecture_names_keys(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="missing|unexpected"):
        load_promptiqa(str(tmp_path / "m.pt"), CFG.model_copy(update={"fusion_depth": 3}))


def test_to_batch_resizes_uint8_images():
    batch = to_batch([np.full((10, 20, 3), 255, np.uint8), np.zeros((30, 30, 3), np.uint8)], 16)
    assert batch.shape == (2, 3, 16, 16)
    assert torch.allclose(batch[0], torch.ones(3, 16, 16)) and float(batch[1].abs().max()) == 0.0
