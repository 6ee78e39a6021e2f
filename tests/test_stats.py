"""Statistics helpers against hand-computed values."""

import math

import numpy as np
import pytest

from wlarl.utils.stats import (
    binary_confusion,
    changed_pixel_mask,
    nanmean,
    precision_recall,
    psnr,
    success_summary,
    wilson_interval,
)


def test_wilson_hand_computed():
    # k=5, n=10, z=1.96: centre = (0.5 + 3.8416/20) / (1 + 0.38416) = 0.5,
    # half = 1.96 * sqrt(0.025 + 3.8416/400) / 1.38416 = 0.263407
    low, high = wilson_interval(5, 10, z=1.96)
    assert low == pytest.approx(0.5 - 0.263407, abs=1e-5)
    assert high == pytest.approx(0.5 + 0.263407, abs=1e-5)
    # k=0: low = 0, high = z²/n / (1 + z²/n) = 0.38416 / 1.38416
    low, high = wilson_interval(0, 10, z=1.96)
    assert low == 0.0 and high == pytest.approx(0.38416 / 1.38416, abs=1e-6)
    # k=n: symmetric to k=0
    low, high = wilson_interval(10, 10, z=1.96)
    assert low == pytest.approx(1.0 / 1.38416, abs=1e-6) and high == pytest.approx(1.0)
    # k=8, n=20: p=0.4, z²=3.8416 → centre = (0.4 + 0.09604)/1.19208 = 0.416113,
    # half = 1.96*sqrt(0.012 + 0.0024010)/1.19208 = 0.197307
    low, high = wilson_interval(8, 20, z=1.96)
    assert low == pytest.approx(0.416113 - 0.197307, abs=1e-5)
    assert high == pytest.approx(0.416113 + 0.197307, abs=1e-5)


def test_wilson_bounds_contain_the_estimate_exactly_at_the_edges():
    # at 0 of 50 the unclamped formula leaves low = 6.9e-18 > p̂ = 0 (a negative error bar in plots)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    for n in (1, 7, 50, 400):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_edges_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(3, 2)
    s = success_summary([True, False, True, True])
    assert s["success"] == 0.75 and s["n"] == 4 and s["successes"] == 3
    assert s["ci_low"] < 0.75 < s["ci_high"]
    assert math.isnan(success_summary([])["success"])


def test_confusion_and_precision_recall():
    pred = [True, True, False, False, True]
    real = [True, False, True, False, True]
    c = binary_confusion(pred, real)
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    pr = precision_recall(c)
    assert pr["precision"] == pytest.approx(2 / 3)
    assert pr["recall"] == pytest.approx(2 / 3)
    assert pr["agreement"] == pytest.approx(3 / 5)
    assert math.isnan(precision_recall({"tp": 0, "fp": 0, "fn": 1, "tn": 0})["precision"])
    with pytest.raises(ValueError, match="equal length"):
        binary_confusion([True], [True, False])


def test_psnr_full_and_masked():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one pixel of 16 fully wrong → MSE = 255²/16 → PSNR = 10·log10(16)
    out = psnr(b, a)
    assert out[0] == pytest.approx(10 * math.log10(16))
    assert out[1] == 100.0  # identical images are capped
    mask = changed_pixel_mask(a, b)
    assert mask.sum() == 1
    masked = psnr(b, a, mask=mask)
    assert masked[0] == pytest.approx(0.0)  # the only changed pixel is fully wrong
    assert np.isnan(masked[1])  # nothing changed in image 1
    assert nanmean([1.0, float("nan"), 3.0]) == 2.0


def test_video_writing_falls_back_to_gif(tmp_path):
    import imageio.v3 as iio

    from wlarl.utils.video import frame_strip, side_by_side, write_video

    frames = np.random.default_rng(0).integers(0, 255, (4, 8, 6, 3), dtype=np.uint8)
    both = side_by_side(frames, frames[:2], gap=2)
    assert both.shape == (4, 8, 14, 3) and np.array_equal(both[3, :, 8:], frames[1])  # shorter one holds its last
    path = write_video(both, tmp_path / "v" / "x.mp4", fmt="mp4")  # gif when no mp4 encoder plugin works
    assert path.exists() and path.suffix in (".mp4", ".gif")
    gif = write_video(frames, tmp_path / "y", fmt="gif")
    assert gif.suffix == ".gif" and iio.imread(gif).shape[0] == 4
    assert frame_strip(frames, max_frames=2).shape == (8, 12, 3)
    with pytest.raises(TypeError, match="uint8"):
        write_video(frames.astype(np.float32), tmp_path / "z")


def test_spearman_ranks_ties_and_reports_a_constant_side_as_asked():
    import math

    from wlarl.utils.stats import spearman

    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == 1.0
    assert spearman([3, 1, 2], [1, 3, 2]) == -1.0
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3], constant=float("nan")))
    assert math.isnan(spearman([5], [1], constant=float("nan")))


def test_branch_strip_stacks_real_over_predicted_and_pads_a_short_row(tmp_path):
    import imageio.v3 as iio

    from wlarl.utils.video import branch_strip, write_png_atomic

    start = np.full((4, 4, 3), 10, np.uint8)
    real = np.full((3, 4, 4, 3), 200, np.uint8)
    predicted = np.full((2, 4, 4, 3), 50, np.uint8)
    strip = branch_strip(start, real, predicted, gap=1)
    assert strip.shape == (9, 4 * 4 + 3, 3)
    assert (strip[:4, :4] == 10).all() and (strip[5:, :4] == 10).all()
    assert (strip[:4, 5:9] == 200).all() and (strip[5:, 5:9] == 50).all()
    assert (strip[5:, 15:] == 128).all()  # the predicted row has one frame fewer: grey
    path = write_png_atomic(tmp_path / "s.png", strip)
    assert (iio.imread(path) == strip).all() and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="start frame's size"):
        branch_strip(start, np.zeros((1, 8, 8, 3), np.uint8), predicted)
