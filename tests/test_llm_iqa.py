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


def test_algorithm1_threshold_and_complement():
    shape = (10, 10)
    big = _rect(shape, 0, 5, 0, 6)  # 30 px
    small = _rect(shape, 8, 9, 8, 10)  # 2 px
    out = llm_iqa.select_masks([big, small], shape, t=0.05)  # t*area = 5 px
    assert len(out) == 2
    assert np.array_equal(out[0], big)
    assert out[1].sum() == 70 and not (out[1] & big).any()  # the complement of the kept masks only
    assert out[1][8, 8]  # the dropped small mask's pixels belong to the complement
    assert len(llm_iqa.select_masks([big, small], shape, t=0.05, complement=False)) == 1


def test_algorithm1_small_complement_dropped_and_no_masks_gives_whole_image():
    shape = (10, 10)
    almost = _rect(shape, 0, 10, 0, 9)  # 90 px, complement 10 px
    assert len(llm_iqa.select_masks([almost], shape, t=0.2)) == 1  # 10 px < 20 px threshold
    assert len(llm_iqa.select_masks([almost], shape, t=0.1)) == 2  # 10 px >= 10 px
    full = np.ones(shape, bool)
    assert len(llm_iqa.select_masks([full], shape, t=0.0)) == 1  # empty complement never added
    whole = llm_iqa.select_masks([], shape, t=0.5)
    assert len(whole) == 1 and whole[0].all()


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
