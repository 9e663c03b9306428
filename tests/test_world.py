"""The synthetic scene world: determinism, independence, structure, dataset and datamodule."""

import math

import pytest
import torch

from lightning_dissect.segmenters import SceneWorld, SyntheticSceneDataset
from lightning_dissect.segmenters.synthetic import DEFAULT_MAX_DISTANCE
from lightning_dissect.segmenters.world import TEXTURE_AMPLITUDE


@pytest.fixture(scope="module")
def world32():
    return SceneWorld(32)


def test_same_seed_is_bit_identical_and_seeds_differ(world32):
    a_img, a_lab = world32.render(64, seed=3)
    b_img, b_lab = world32.render(64, seed=3)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    c_img, c_lab = world32.render(64, seed=4)
    assert not torch.equal(a_img, c_img)
    assert (a_lab != c_lab).float().mean() > 0.2


def test_sample_depends_only_on_seed_and_index(world32):
    images, labels = world32.render(40, seed=11)
    one_img, one_lab = world32.render(1, seed=11, start=17)
    assert torch.equal(one_img[0], images[17]) and torch.equal(one_lab[0], labels[17])
    sl_img, sl_lab = world32.render(10, seed=11, start=25)
    assert torch.equal(sl_img, images[25:35]) and torch.equal(sl_lab, labels[25:35])
    idx = [39, 0, 5, 5]
    ix_img, ix_lab = world32.render_indices(idx, seed=11)
    assert torch.equal(ix_img, images[idx]) and torch.equal(ix_lab, labels[idx])
    # the chunking of the vectorised renderer does not matter either
    chunked_img, chunked_lab = SceneWorld(32, chunk_size=7).render(40, seed=11)
    assert torch.equal(chunked_img, images) and torch.equal(chunked_lab, labels)
    # neighbouring streams are not shifted copies of each other
    other, _ = world32.render(40, seed=12)
    assert not any(torch.equal(other[i], images[i + 1]) for i in range(39))


def test_images_labels_and_texture_bound(world32):
    images, labels = world32.render(500, seed=0)
    assert images.dtype == torch.float32 and images.shape == (500, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (500, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    assert (labels > 0).all(), "the world's own images have no unlabeled pixel"
    base = world32.palette[labels].permute(0, 3, 1, 2)
    assert (images - base).abs().max() <= TEXTURE_AMPLITUDE + 1e-6
    counts = torch.bincount(labels.flatten(), minlength=world32.num_concepts)
    v = world32.vocabulary
    for name in v.names:
        if name in ("unlabeled", "tree", "house"):  # wholes are painted only as their parts
            assert counts[v.index(name)] == 0
        else:
            assert counts[v.index(name)] > 0, f"{name} never appears in 500 scenes"


def test_layouts_vary(world32):
    _, labels = world32.render(200, seed=1)
    v = world32.vocabulary
    present = torch.stack(
        [(labels == v.index(n)).flatten(1).any(1) for n in ("water", "road", "sun", "window")]
    ).float().mean(1)
    assert ((present > 0.1) & (present < 0.9)).all(), present
    sky = (labels == v.index("sky")).float().mean((1, 2))
    assert sky.std() > 0.05  # the horizon moves


def test_palette_is_separated_for_exact_segmentation(world32):
    noise_norm = TEXTURE_AMPLITUDE * math.sqrt(3)  # largest texture deviation (Euclidean)
    d = world32.min_palette_distance()
    assert d > 2 * noise_norm + 0.2
    assert noise_norm + 0.05 < DEFAULT_MAX_DISTANCE <= d / 2
    assert world32.palette.shape == (world32.num_concepts, 3)
    assert world32.palette.min() >= -1 and world32.palette.max() <= 1


def test_vocabulary_parts_and_wholes(world32):
    v = world32.vocabulary
    assert v.names[0] == "unlabeled" and v.unlabeled_index == 0 and v.categories[0] == "none"
    for part, whole in [("window", "house"), ("door", "house"), ("wall", "house"),
                        ("roof", "house"), ("trunk", "tree"), ("foliage", "tree")]:
        assert v.parents[v.index(part)] == v.index(whole)
        assert v.categories[v.index(part)] == "part"
    assert v.parents[v.index("sky")] is None
    assert set(v.category_names) == {"material", "object", "part"}


def test_multilabel_gives_part_and_whole(world32):
    _, labels = world32.render(20, seed=2)
    ml = world32.multilabel(labels)
    v = world32.vocabulary
    assert ml.shape == (20, 2, 32, 32) and ml.dtype == torch.int64
    assert torch.equal(ml[:, 0], labels)
    window = labels == v.index("window")
    assert window.any()
    assert (ml[:, 1][window] == v.index("house")).all()
    trunk = labels == v.index("trunk")
    assert (ml[:, 1][trunk] == v.index("tree")).all()
    assert (ml[:, 1][labels == v.index("sky")] == 0).all()


@pytest.mark.parametrize("size", [16, 48, 64])
def test_other_sizes(size):
    images, labels = SceneWorld(size).render(4, seed=0)
    assert images.shape == (4, 3, size, size) and labels.shape == (4, size, size)


def test_bad_sizes():
    with pytest.raises(ValueError, match="image_size"):
        SceneWorld(8)
    with pytest.raises(ValueError, match="n must be"):
        SceneWorld(16).render(-1)


def test_dataset_is_indexable():
    ds = SyntheticSceneDataset(12, seed=5, image_size=16)
    images, labels = ds.world.render(12, seed=5)
    assert len(ds) == 12
    img, lab = ds[7]
    assert torch.equal(img, images[7]) and torch.equal(lab, labels[7])
    assert torch.equal(ds[-1][0], images[11])
    batch = ds.__getitems__([3, 1])
    assert torch.equal(batch[0][0], images[3]) and torch.equal(batch[1][1], labels[1])
    with pytest.raises(IndexError):
        ds[12]
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    first_img, first_lab = next(iter(loader))
    assert torch.equal(first_img, images[:5]) and torch.equal(first_lab, labels[:5])


def test_datamodule_batches():
    from lightning_dissect.segmenters import SyntheticSceneDataModule

    dm = SyntheticSceneDataModule(image_size=16, num_train=10, num_val=6, batch_size=4, seed=3)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4, 16, 16)
    val = list(dm.val_dataloader())
    assert [len(b[0]) for b in val] == [4, 2]
    ref, _ = SceneWorld(16).render(6, seed=4)  # validation is the stream seed + 1
    assert torch.equal(torch.cat([b[0] for b in val]), ref)


def test_dataset_block_cache_matches_rendering():
    ds = SyntheticSceneDataset(70, seed=2, image_size=16)
    images, labels = ds.world.render(70, seed=2)
    for i in (0, 31, 32, 69, 5, 64):
        img, lab = ds[i]
        assert torch.equal(img, images[i]) and torch.equal(lab, labels[i])
