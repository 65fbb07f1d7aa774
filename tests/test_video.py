import numpy as np
import pytest

from dynexport import video


def test_same_seed_same_clip_and_presets_differ():
    a = video.generate("static_camera", seed=3, frames=4)
    b = video.generate("static_camera", seed=3, frames=4)
    assert np.array_equal(a.frames, b.frames)
    assert a.frames.shape == (4, 3, 64, 64) and a.frames.dtype == np.uint8
    assert not np.array_equal(a.frames, video.generate("static_camera", seed=4, frames=4).frames)


def test_still_stretch_is_identical_and_cut_changes_everything():
    clip = video.generate("mixed", seed=0, drift=0.0)
    assert np.array_equal(clip.frames[9], clip.frames[10])  # inside the still stretch
    change = np.abs(clip.frames[28].astype(int) - clip.frames[27]).mean()
    motion = np.abs(clip.frames[5].astype(int) - clip.frames[4]).mean()
    assert change > 5 * motion


def test_handheld_changes_most_pixels_static_camera_few():
    def changed(name):
        f = video.generate(name, seed=1, frames=6, noise_std=0.0).frames.astype(int)
        return (np.abs(np.diff(f, axis=0)).max(axis=1) > 8).mean()

    assert changed("handheld") > 0.4
    assert changed("static_camera") < 0.15


def test_drift_brightens_slowly():
    clip = video.generate("drift", seed=0, frames=30)
    means = clip.frames.reshape(30, -1).mean(1)
    assert means[-1] > means[0] and np.abs(np.diff(means)).max() < 1.5


def test_heatmaps_peak_at_shape_centers():
    clip = video.generate("static_camera", seed=2, frames=2)
    maps = video.keypoint_heatmaps(clip)
    cy, cx = clip.centers[0, 0]
    kind = clip.kinds[0, 0]
    assert maps[0, kind, int(round(cy)), int(round(cx))] > 0.8


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown synthetic clip 'nope'"):
        video.generate("nope")
