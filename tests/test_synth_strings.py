"""Synthetic digit strings: shapes, padding, targets that spell the texts, seeding, touching ink, separator shares."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import make_arrays
from digitlab.data.synth_strings import ALPHABET, StringOptions, synthetic_strings


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The generator's tensors are small enough that a second thread only waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    arrays = make_arrays(n_train=200, n_test=10, seed=5)
    return arrays["train_images"], arrays["train_labels"]


def decode(targets: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    return ["".join(ALPHABET[c - 1] for c in row[:n].tolist()) for row, n in zip(targets, lengths, strict=True)]


def test_shapes_dtypes_and_padding(blobs) -> None:
    batch, widths, targets, lengths, texts = synthetic_strings(*blobs, 300, seed=1, height=32, max_chars=12)
    n, _, h, w = batch.shape
    assert (n, h) == (300, 32) and batch.shape[1] == 1 and w % 4 == 0 and batch.dtype == torch.float32
    assert widths.dtype == targets.dtype == lengths.dtype == torch.int64
    assert widths.shape == lengths.shape == (300,) and targets.shape == (300, int(lengths.max()))
    assert batch.min() >= 0 and batch.max() <= 1
    assert widths.max() <= w and widths.min() > 0 and widths.max() > w - 4
    beyond = torch.arange(w)[None, :] >= widths[:, None]  # (n, W)
    assert not batch[:, 0].permute(0, 2, 1)[beyond].any()
    assert all(batch[i, 0, :, : widths[i]].amax() > 0.5 for i in range(n))  # ink inside every string
    assert lengths.min() >= 1 and lengths.max() <= 12 and len(texts) == 300
    assert (targets[torch.arange(targets.shape[1])[None] >= lengths[:, None]] == 0).all()
    assert targets.max() <= len(ALPHABET)


def test_targets_spell_the_texts(blobs) -> None:
    _, _, targets, lengths, texts = synthetic_strings(*blobs, 400, seed=2, options=StringOptions(p_separator=0.8))
    assert decode(targets, lengths) == texts
    assert [len(t) for t in texts] == lengths.tolist()
    assert set("".join(texts)) <= set(ALPHABET) and set("".join(texts)) & set(".,-/")
    lengths_seen = np.bincount(lengths.numpy(), minlength=13)
    assert lengths_seen[1:8].sum() > 0.75 * 400 and lengths_seen[8:].sum() > 0  # mostly short, some long


def test_max_chars_bounds_every_string(blobs) -> None:
    _, _, _, lengths, texts = synthetic_strings(*blobs, 200, seed=3, max_chars=4,
                                                options=StringOptions(p_trailing=0.5, p_separator=0.5))
    assert lengths.max() <= 4 and max(len(t) for t in texts) <= 4


def test_seeded_and_deterministic(blobs) -> None:
    a = synthetic_strings(*blobs, 64, seed=7)
    b = synthetic_strings(*blobs, 64, seed=7)
    c = synthetic_strings(*blobs, 64, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4], strict=True)) and a[4] == b[4]
    assert a[4] != c[4] or not torch.equal(a[0], c[0])
    torch.manual_seed(0)
    d = synthetic_strings(*blobs, 64, seed=7)
    assert torch.equal(a[0], d[0])  # the global RNG plays no part


def test_separators_appear_with_their_probability(blobs) -> None:
    for p in (0.0, 0.3, 1.0):
        texts = synthetic_strings(*blobs, 600, seed=4, options=replace(StringOptions.separated(), p_separator=p))[4]
        share = np.mean([any(s in t for s in ".,-/") for t in texts])
        assert abs(share - p) < 0.06, (p, share)
        assert not any(t[0] in ".,-/" or t[-1] in ".,-/" for t in texts)  # separators sit inside


def test_touching_option_gives_touching_ink(mnist_dataset) -> None:
    images, labels = mnist_dataset.train_images[:500], mnist_dataset.train_labels[:500]

    def gapless_share(options: StringOptions) -> float:
        batch, _, _, lengths, _ = synthetic_strings(images, labels, 200, seed=5, options=options)
        inked = batch[:, 0].amax(1) > 0.2  # (n, W) columns with ink
        idx = torch.arange(batch.shape[-1])
        first = torch.where(inked, idx, 10**6).amin(1)
        last = torch.where(inked, idx, -1).amax(1)
        inside = (idx >= first[:, None]) & (idx <= last[:, None])
        gapless = ~(inside & ~inked).any(1)  # no empty column between the first and the last ink
        return gapless[lengths >= 2].float().mean().item()

    assert gapless_share(StringOptions.touching()) > 0.9
    assert gapless_share(StringOptions.separated()) < 0.1


def test_clean_setting_has_no_page_effects(blobs) -> None:
    def zero_share(options: StringOptions) -> float:
        batch, widths, *_ = synthetic_strings(*blobs, 100, seed=6, options=options)
        inside = (torch.arange(batch.shape[-1])[None, :] < widths[:, None])[:, None, :].expand(-1, batch.shape[2], -1)
        return (batch[:, 0][inside] == 0).float().mean().item()

    # Without background, noise or lines, the page is MNIST's black wherever there is no glyph.
    clean = zero_share(StringOptions.separated())
    assert clean > 0.3
    assert zero_share(replace(StringOptions.separated(), p_background=1, p_noise=1)) < clean - 0.2


def test_bad_input_is_refused(blobs) -> None:
    with pytest.raises(ValueError, match="28, 28"):
        synthetic_strings(np.zeros((4, 20, 20), np.uint8), np.zeros(4, np.int64), 3)
    with pytest.raises(ValueError, match="probabilities"):
        StringOptions(p_blur=2)
