"""Known answers for LLM-IQA section 3: the prompt, the readout, Algorithm 1, aggregation, Eq. 1."""
import numpy as np
import pytest
from scipy import stats

from rayiqa.methods import llm_iqa


def test_word_standard_prompt_is_the_papers():
    p = llm_iqa.standard_prompt(7, "word")
    assert "7: Perfect, 6: Excellent, 5: Good, 4: Fair, 3: Bad, 2: Poor, 1: Very Bad." in p.system
    assert p.system.startswith("You are a helpful assistant to evaluate image quality.")
    assert p.system.endswith("The higher the image quality is, the higher the score should be.")
    assert p.user == "Please evaluate the quality of the image and score in [1, 2, 3, 4, 5, 6, 7]."
    assert p.levels == tuple("1234567")
    assert p.level_values().tolist() == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_every_k_and_standard_lists_k_levels(k):
    word = llm_iqa.standard_prompt(k, "word")
    sentence = llm_iqa.standard_prompt(k, "sentence")
    number = llm_iqa.standard_prompt(k, "number")
    assert len(word.levels) == k and word.user.endswith(f"{k}].")
    for i in range(1, k + 1):
        assert f"{i}: " in word.system and f"{i}: " in sentence.system
    assert "Perfect" not in number.system and "Good" not in number.system and f"1 to {k}" in number.system
    assert word.system != sentence.system


def test_bad_levels_and_standard_are_errors():
    with pytest.raises(ValueError, match="levels must be one of"):
        llm_iqa.standard_prompt(4)
    with pytest.raises(ValueError, match="standard"):
        llm_iqa.standard_prompt(7, "emoji")


def test_level_score_expectation_and_argmax():
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    values = np.array([1.0, 2.0, 3.0])
    assert llm_iqa.level_score(probs, values).tolist() == pytest.approx([2.6, 1.7])
    assert llm_iqa.level_score(probs, values, "argmax").tolist() == [3.0, 1.0]


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _algorithm1(masks, shape, t):
    """Algorithm 1 end to end on hand-made masks: the kept masks, then the remain mask if any."""
    kept = llm_iqa.select_masks([int(m.sum()) for m in masks], shape, t)
    covered = np.zeros(shape, bool)
    for i in kept:
        covered |= masks[i]
    remain = llm_iqa.remain_mask(covered, t)
    return [masks[i] for i in kept] + ([] if remain is None else [remain])


def test_algorithm1_threshold_and_complement():
    shape = (10, 10)
    big = _rect(shape, 0, 5, 0, 6)  # 30 px
    small = _rect(shape, 8, 9, 8, 10)  # 2 px
    assert llm_iqa.select_masks([30, 2], shape, t=0.05) == [0]  # t*area = 5 px
    out = _algorithm1([big, small], shape, t=0.05)
    assert len(out) == 2
    assert np.array_equal(out[0], big)
    assert out[1].sum() == 70 and not (out[1] & big).any()  # the complement of the kept masks only
    assert out[1][8, 8]  # the dropped small mask's pixels belong to the complement


def test_algorithm1_small_complement_dropped_and_no_masks_gives_whole_image():
    shape = (10, 10)
    almost = _rect(shape, 0, 10, 0, 9)  # 90 px, complement 10 px
    assert len(_algorithm1([almost], shape, t=0.2)) == 1  # 10 px < 20 px threshold
    assert len(_algorithm1([almost], shape, t=0.1)) == 2  # 10 px >= 10 px
    full = np.ones(shape, bool)
    assert len(_algorithm1([full], shape, t=0.0)) == 1  # empty complement never added
    whole = _algorithm1([], shape, t=0.5)
    assert len(whole) == 1 and whole[0].all()


@pytest.mark.parametrize(("t", "shape", "pixels"), [(0.07, (100, 100), 700), (0.02, (384, 256), 1967), (0.1, (3, 7), 3)])
def test_algorithm1_threshold_in_whole_pixels(t, shape, pixels):
    assert llm_iqa.min_area(t, shape) == pixels
    assert llm_iqa.select_masks([pixels, pixels - 1], shape, t) == [0]
    covered = np.zeros(shape, bool).ravel()
    covered[: shape[0] * shape[1] - pixels] = True  # a remain mask of exactly the threshold's area
    assert llm_iqa.remain_mask(covered.reshape(shape), t).sum() == pixels
    covered[shape[0] * shape[1] - pixels] = True  # one pixel less
    assert llm_iqa.remain_mask(covered.reshape(shape), t) is None


def test_area_equal_to_a_threshold_that_is_not_exactly_representable_is_kept():
    assert 0.07 * 100 * 100 > 700  # the float product lies just above the 700 pixels t means
    shape = (100, 100)
    mask = _rect(shape, 0, 7, 0, 100)  # 700 px
    out = _algorithm1([mask], shape, t=0.07)
    assert len(out) == 2 and np.array_equal(out[0], mask) and out[1].sum() == 9300


def test_bbox_and_crops():
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    mask = np.zeros((6, 8), bool)
    mask[1, 2] = mask[3, 5] = True
    box = llm_iqa.bbox(mask)
    assert box == (2, 1, 6, 4)
    c = llm_iqa.crop(image, box)
    assert c.shape == (3, 4, 3) and np.array_equal(c, image[1:4, 2:6])
    z = llm_iqa.crop(image, box, mask)
    assert np.array_equal(z[0, 0], image[1, 2]) and np.array_equal(z[2, 3], image[3, 5])
    assert z[0, 1].sum() == 0 and z[1, 1].sum() == 0
    with pytest.raises(ValueError):
        llm_iqa.bbox(np.zeros((3, 3), bool))


def test_area_weighted_local_and_mix_grained_score():
    assert llm_iqa.area_weights([30, 10]).tolist() == [0.75, 0.25]
    assert llm_iqa.local_score([2.0, 4.0], [30, 10]) == pytest.approx(2.5)
    assert llm_iqa.mix_grained_score(3.0, 2.5, lam=1.0) == pytest.approx(5.5)
    assert llm_iqa.mix_grained_score(3.0, 2.5, lam=0.5) == pytest.approx(4.25)
    assert llm_iqa.mix_grained_score(3.0, None) == 3.0
    assert llm_iqa.ensemble_score([5.5, 4.5, 6.0]) == pytest.approx(16 / 3)


def test_eq1_discretisation_and_upper_bound():
    mos = np.array([10.0, 35.0, 60.0, 85.0, 110.0])
    assert llm_iqa.discretise_mos(mos, 3).tolist() == [0, 0, 1, 2, 2]  # round(2 * [0,.25,.5,.75,1])
    assert llm_iqa.discretise_mos(mos, 3, literal=True).tolist() == [0, 1, 2, 2, 3]  # round(3 * ...)
    rng = np.random.default_rng(0)
    mos = rng.normal(50, 15, size=500)
    for k in (3, 7):
        disc = np.round((k - 1) * (mos - mos.min()) / (mos.max() - mos.min()))
        expected = (stats.spearmanr(disc, mos)[0] + stats.pearsonr(disc, mos)[0]) / 2
        assert llm_iqa.k_level_upper_bound(mos, k) == pytest.approx(expected)
    assert llm_iqa.k_level_upper_bound(mos, 3) < llm_iqa.k_level_upper_bound(mos, 9) < 1.0
