"""Synthetic non-digits (outlier exposure), the stroke-width augmentation, and training with both."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from digitlab.core.config import AugmentSection
from digitlab.data import nondigits
from digitlab.data.nondigits import cached_nondigits, synthetic_nondigits
from digitlab.inference import Predictor
from digitlab.training import config_from_recipe, train_run
from digitlab.training.augment import RandomStroke, build_augmenter


def test_nondigits_are_drawn_the_mnist_way_and_seeded() -> None:
    bank = synthetic_nondigits(30, seed=3)
    assert bank.shape == (30, 28, 28) and bank.dtype == np.uint8
    assert np.array_equal(bank, synthetic_nondigits(30, seed=3))
    assert not np.array_equal(bank, synthetic_nondigits(30, seed=4))
    for im in bank:
        assert im.max() == 255
        ys, xs = np.nonzero(im)
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 21  # fitted into the 20 px box
        cy, cx = ndi.center_of_mass(im.astype(float))
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_nondigits_are_cached_and_a_damaged_cache_is_redrawn(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(nondigits, "user_cache_dir", lambda: tmp_path)
    first = cached_nondigits(6, seed=1)
    files = list((tmp_path / "nondigits").glob("*.npy"))
    assert len(files) == 1
    assert np.array_equal(cached_nondigits(6, seed=1), first)
    files[0].write_bytes(b"garbage")
    assert np.array_equal(cached_nondigits(6, seed=1), first)


def test_random_stroke_thins_and_thickens() -> None:
    x = torch.zeros(200, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0  # a 4 px bar
    torch.manual_seed(0)
    out = RandomStroke(1.0)(x)
    mass = out.sum(dim=(1, 2, 3))
    assert (mass > x[0].sum() + 1).any() and (mass < x[0].sum() - 1).any()
    assert torch.equal(RandomStroke(0.0)(x), x)
    assert out.min() >= 0 and out.max() <= 1
    assert AugmentSection(stroke=0.3).enabled
    assert any(isinstance(m, RandomStroke) for m in build_augmenter(AugmentSection(stroke=0.3)))


@pytest.mark.mnist
def test_outlier_exposure_makes_the_model_unsure_of_non_digits(mnist_dataset, tmp_path: Path) -> None:
    tiny = ["data.train_subset=1000", "data.n_val=200", "train.batch_size=50", "train.epochs=3",
            "model.args={blocks: [{filters: 8, pool_first: true, batch_norm: true}], dense: []}",
            "train.outlier_bank=300", "train.outlier_fraction=0.5"]
    unseen = synthetic_nondigits(150, seed=99)  # not the training bank (seed 0)
    confidence = {}
    for weight in (0.0, 1.0):
        cfg = config_from_recipe("fast", [*tiny, f"train.outlier_exposure={weight}"])
        run = train_run(cfg, out_root=tmp_path / str(weight), show_progress=False)
        p = Predictor.from_run(run.run_dir)
        confidence[weight] = (float(p.predict_proba(unseen, calibrated=False).max(axis=1).mean()),
                              run.best_val_acc)
    assert confidence[1.0][0] < confidence[0.0][0] - 0.1, confidence  # unsure of what is not a digit
    assert confidence[1.0][1] > confidence[0.0][1] - 0.05, confidence  # and still reads digits
