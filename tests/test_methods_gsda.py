"""GSDA components with known answers, config validation, and tiny end-to-end runs with resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from raysel.errors import ConfigError
from raysel.hyperparameters import config_from_dict
from raysel.methods import gsda
from raysel.methods.base import LocalSession, RunContext, RunSpec, StopRun
from raysel.registry import get_method


# --------------------------------------------------------------------------------------------------------------
# A tiny in-test classification benchmark and a RunContext over it (no data package, no Ray)
# --------------------------------------------------------------------------------------------------------------


class StripeImages(Dataset):
    """Class c = a bright horizontal stripe at height band c; the target domain is shifted in colour and noise."""

    def __init__(self, count: int, num_classes: int, target: bool, with_labels: bool, size: int = 16) -> None:
        generator = torch.Generator().manual_seed(1 if target else 0)
        self.labels = torch.arange(count) % num_classes
        images = 0.3 * torch.randn(count, 3, size, size, generator=generator)
        band = size // num_classes
        for label in range(num_classes):
            images[self.labels == label, :, label * band:(label + 1) * band, :] += 2.0
        if target:
            images = images * torch.tensor([1.5, 0.5, 1.0]).view(1, 3, 1, 1) + 0.5
        self.images, self.with_labels = images, with_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        sample = {"image": self.images[index], "index": index, "name": f"{index:04d}"}
        if self.with_labels:
            sample["label"] = self.labels[index]
        return sample


class StripeContext(RunContext):
    """RunContext over :class:`StripeImages` (the target dataset has no labels, as for a real method)."""

    def __init__(self, session: LocalSession, root: Path, num_classes: int = 3) -> None:
        self.spec = RunSpec(method="gsda", dataset="stripes", model="small_cnn", seed=0, output_dir=str(root),
                            cache_dir=str(root / "cache"))
        self.session = session
        self.task, self.num_classes = "classification", num_classes
        self.source, self.target = "plain", "shifted"
        self.data_root, self.output_dir, self.cache_dir = root, root, root / "cache"

    def source_dataset(self, split: str = "train") -> Dataset:
        return StripeImages(24, self.num_classes, target=False, with_labels=True)

    def target_dataset(self) -> Dataset:
        return StripeImages(24, self.num_classes, target=True, with_labels=False)


def tiny_config(**overrides) -> gsda.GsdaConfig:
    values = dict(groups=2, iterations=6, batch_size=4, num_reports=3, init_from_source=False,
                  discriminator_hidden=16, learning_rate=0.01, discriminator_learning_rate=0.01)
    values.update(overrides)
    return config_from_dict(gsda.GsdaConfig, values)


def random_probabilities(rows: int, classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)).softmax(dim=1)


# --------------------------------------------------------------------------------------------------------------
# Groups (Eq. 8)
# --------------------------------------------------------------------------------------------------------------


def test_group_assignment_is_a_seeded_balanced_partition():
    assignment = gsda.group_assignment(10, 3, seed=0)
    sizes = torch.bincount(assignment, minlength=3)
    assert sizes.sum() == 10 and sorted(sizes.tolist()) == [3, 3, 4]
    assert torch.equal(assignment, gsda.group_assignment(10, 3, seed=0))
    assert any(not torch.equal(assignment, gsda.group_assignment(10, 3, seed=s)) for s in (1, 2, 3))
    assert torch.equal(gsda.group_assignment(4, 4, seed=5).sort().values, torch.arange(4))
    with pytest.raises(ConfigError, match="groups"):
        gsda.group_assignment(3, 4, seed=0)


def test_group_probabilities_sum_the_class_probabilities_of_each_group():
    probabilities = random_probabilities(5, 7)
    assignment = gsda.group_assignment(7, 3, seed=2)
    grouped = gsda.group_probabilities(probabilities, gsda.group_membership(assignment, 3))
    expected = torch.stack([probabilities[:, assignment == q].sum(dim=1) for q in range(3)], dim=1)
    torch.testing.assert_close(grouped, expected)
    torch.testing.assert_close(grouped.sum(dim=1), torch.ones(5))


# --------------------------------------------------------------------------------------------------------------
# Losses (Eq. 4, 6-12)
# --------------------------------------------------------------------------------------------------------------


def test_conditional_entropy_at_uniform_and_one_hot_extremes():
    assert gsda.conditional_entropy(torch.zeros(4, 10)).item() == pytest.approx(math.log(10))
    one_hot = 1e4 * F.one_hot(torch.tensor([0, 3, 9]), 10).float()
    assert gsda.conditional_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    probabilities = torch.tensor([[0.5, 0.25, 0.25]])
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert gsda.conditional_entropy(probabilities.log()).item() == pytest.approx(expected)


def test_one_hot_class_weights_reduce_to_the_per_class_subset():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, generator=generator)  # two "class" discriminators
    domain_labels = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])
    classes = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    losses = gsda.weighted_domain_losses(logits, domain_labels, F.one_hot(classes, 2).float())
    for k in range(2):
        subset = classes == k
        expected = F.binary_cross_entropy_with_logits(logits[k, subset], domain_labels[subset], reduction="sum") / 8
        torch.testing.assert_close(losses[k], expected)
    all_ones = gsda.weighted_domain_losses(logits[:1], domain_labels, torch.ones(8, 1))
    torch.testing.assert_close(all_ones[0], F.binary_cross_entropy_with_logits(logits[0], domain_labels))


def test_sync_loss_formula_is_zero_when_magnitudes_agree_and_counts_mismatches():
    assignment = torch.tensor([0, 1, 0, 2, 1])
    membership = gsda.group_membership(assignment, 3)
    classes = torch.tensor([0.5, 1.0, 0.25, 2.0, 0.75])
    groups = classes @ membership  # [0.75, 1.75, 2.0]
    assert gsda.synchronization_loss(groups.sum(), groups, classes, membership).item() == pytest.approx(0.0)
    off = groups + torch.tensor([0.3, 0.0, 0.0])
    # Eq. 10 mismatch 0.3 averaged over b = 3 groups, plus Eq. 11 mismatch |4.5 - 4.8|.
    assert gsda.synchronization_loss(groups.sum(), off, classes, membership).item() == pytest.approx(0.1 + 0.3)


def _discriminators_and_batch(num_classes: int = 4, groups: int = 2, identical: bool = False):
    torch.manual_seed(0)
    discriminators = gsda.HierarchicalDiscriminators(6, groups, num_classes, hidden=8, dropout=0.0).eval()
    if identical:
        for discriminator in discriminators.discriminators[1:]:
            discriminator.load_state_dict(discriminators.discriminators[0].state_dict())
    membership = gsda.group_membership(gsda.group_assignment(num_classes, groups, seed=0), groups)
    probabilities = gsda.class_probabilities_for_alignment(
        torch.tensor([0, 1, 2, 3, 1]), torch.randn(5, num_classes), num_classes)
    domain_labels = torch.tensor([1.0] * 5 + [0.0] * 5)
    return discriminators, membership, probabilities, domain_labels


def test_sync_loss_vanishes_for_identical_discriminators_through_real_feature_gradients():
    # With one shared discriminator, dL_j/df_i = w_ij * g_i, and the weights of a group (and of the whole domain)
    # are the sums of its members' weights, so every magnitude equals the sum of its children's: L^syn = 0.
    discriminators, membership, probabilities, domain_labels = _discriminators_and_batch(identical=True)
    features = torch.randn(10, 6, requires_grad=True)
    losses = gsda.alignment_losses(discriminators, features, probabilities, domain_labels, membership, True)
    assert losses.magnitudes is not None and losses.magnitudes.min() > 0
    assert losses.sync_loss.item() == pytest.approx(0.0, abs=1e-6 * losses.magnitudes[0].item())
    distinct = gsda.alignment_losses(_discriminators_and_batch()[0], features, probabilities, domain_labels,
                                     membership, True)
    assert distinct.sync_loss.item() > 1e-4


def test_gradient_magnitudes_match_one_autograd_call_per_discriminator():
    discriminators, membership, probabilities, domain_labels = _discriminators_and_batch()
    features = torch.randn(10, 6, requires_grad=True)
    losses = gsda.alignment_losses(discriminators, features, probabilities, domain_labels, membership, True)
    weights = gsda.discriminator_weights(probabilities, membership, discriminators)
    for j, discriminator in enumerate(discriminators.discriminators):
        loss = gsda.weighted_domain_losses(discriminator(features)[None], domain_labels, weights[:, j:j + 1])[0]
        (gradient,) = torch.autograd.grad(loss, features)
        torch.testing.assert_close(losses.magnitudes[j], gradient.norm(dim=1).sum())


def test_sync_loss_gradients_reach_the_feature_extractor_and_the_discriminators():
    discriminators, membership, probabilities, domain_labels = _discriminators_and_batch()
    extractor = torch.nn.Linear(5, 6)
    features = extractor(torch.randn(10, 5, generator=torch.Generator().manual_seed(3)))
    losses = gsda.alignment_losses(discriminators, features, probabilities, domain_labels, membership, True)
    losses.sync_loss.backward()  # L^syn alone: only the create_graph path links it to the parameters
    assert extractor.weight.grad is not None and extractor.weight.grad.abs().sum() > 0
    assert torch.isfinite(extractor.weight.grad).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminators.parameters())


def test_alignment_weights_are_detached_one_hot_and_thresholded():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0]], requires_grad=True)
    probabilities = gsda.class_probabilities_for_alignment(torch.tensor([2]), logits, 3, confidence_threshold=0.6)
    assert not probabilities.requires_grad  # Eq. 17: C gets no gradient from the discriminator losses
    torch.testing.assert_close(probabilities[0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(probabilities[1], logits[0].detach().softmax(dim=0))
    assert probabilities[2].sum() == 0  # below the confidence threshold


def test_global_alignment_uses_only_the_domain_discriminator():
    discriminators = gsda.HierarchicalDiscriminators(6, 0, 0, hidden=8)
    assert discriminators.count == 1
    probabilities = random_probabilities(4, 3)
    losses = gsda.alignment_losses(discriminators, torch.randn(4, 6), probabilities,
                                   torch.tensor([1.0, 1, 0, 0]), None, synchronize=False)
    assert losses.local_loss.item() == 0 and losses.sync_loss.item() == 0 and losses.global_loss.item() > 0


# --------------------------------------------------------------------------------------------------------------
# Config and registry
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, key", [
    ({"groups": 0}, "groups"), ({"alpha": -0.1}, "alpha"), ({"beta": -1.0}, "beta"),
    ({"alignment": "local"}, "alignment"), ({"iterations": 0}, "iterations"),
    ({"confidence_threshold": 1.0}, "confidence_threshold"), ({"adversarial_schedule": "ramp"}, "adversarial"),
    ({"optimizer": "rmsprop"}, "optimizer"), ({"learning_rate": 0.0}, "learning_rate"),
    ({"gamma": 1.0}, "unknown hyperparameter"),
])
def test_config_validation_names_the_bad_key(values, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(gsda.GsdaConfig, values)


def test_config_defaults_and_group_bound():
    config = gsda.GsdaConfig()
    config.validate()
    assert (config.alpha, config.beta, config.alignment) == (0.02, 1.0, "hierarchical")
    config.validate(num_classes=3)
    with pytest.raises(ConfigError, match=r"groups must be between 1 and the number of classes \(2\)"):
        config.validate(num_classes=2)


def test_registered_as_classification_method():
    method = get_method("gsda")
    assert method.tasks == ("classification",) and method.config_class is gsda.GsdaConfig
    assert {"alpha", "beta", "groups"} <= set(method.hyperparameter_names())


def test_search_space_has_six_grid_points_of_valid_configs():
    import itertools

    from raysel.search_space import load_search_space

    method = get_method("gsda")
    space = load_search_space(method.search_space_path, method)
    assert space.num_grid_points() == 6
    assert {"alpha", "beta", "groups"} <= set(space.entries)
    swept = {name: entry.values for name, entry in space.entries.items()}
    for values in itertools.product(*swept.values()):
        config_from_dict(gsda.GsdaConfig, dict(zip(swept, values))).validate(num_classes=10)  # digits


# --------------------------------------------------------------------------------------------------------------
# End to end on the tiny in-test benchmark
# --------------------------------------------------------------------------------------------------------------


def test_tiny_run_reports_and_resumes_exactly_from_a_checkpoint(tmp_path):
    config = tiny_config()
    session = LocalSession(checkpoint_root=str(tmp_path / "full"))
    model = gsda.train_gsda(config, StripeContext(session, tmp_path)).model
    assert [r["epoch"] for r in session.reports] == [1, 2, 3]
    assert [r["iteration"] for r in session.reports] == [2, 4, 6]
    for report in session.reports:
        assert math.isfinite(report["loss"]) and 0 < report["target_confidence"] <= 1
        assert report["sync_loss"] >= 0 and math.isfinite(report["discriminator_loss"])
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    full = {k: v.clone() for k, v in model.state_dict().items()}

    interrupted = LocalSession(checkpoint_root=str(tmp_path / "interrupted"), stop_after_reports=1)
    context = StripeContext(interrupted, tmp_path)
    with pytest.raises(StopRun):
        gsda.train_gsda(config, context)
    interrupted.stop_after_reports = None
    resumed = gsda.train_gsda(config, context).model  # ctx.restore() picks up the checkpoint of report 1
    assert [r["epoch"] for r in interrupted.reports] == [1, 2, 3]
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, full[key], msg=f"resumed run differs in {key}")


@pytest.mark.parametrize("alignment", ["global", "class"])
def test_ablation_runs_report_no_synchronization(tmp_path, alignment):
    session = LocalSession(checkpoint_root=str(tmp_path))
    gsda.train_gsda(tiny_config(alignment=alignment, iterations=2, num_reports=1), StripeContext(session, tmp_path))
    assert len(session.reports) == 1 and session.reports[0]["sync_loss"] == 0.0
    if alignment == "global":
        assert session.reports[0]["local_loss"] == 0.0
    else:
        assert session.reports[0]["local_loss"] > 0.0


def test_groups_above_the_number_of_classes_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="groups"):
        gsda.train_gsda(tiny_config(groups=4), StripeContext(LocalSession(), tmp_path, num_classes=3))


@pytest.mark.integration
def test_run_from_the_cached_source_stage_adapts_and_beats_chance(tmp_path):
    config = tiny_config(init_from_source=True, source_iterations=60, iterations=30, num_reports=2)
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    context = StripeContext(session, tmp_path)
    model = gsda.train_gsda(config, context).model
    assert any((tmp_path / "cache" / "source_only").iterdir())  # the shared source-only stage was built and cached
    target = StripeImages(24, 3, target=True, with_labels=True)
    with torch.no_grad():
        accuracy = (model(target.images).argmax(dim=1) == target.labels).float().mean().item()
    assert accuracy > 1 / 3


def _ddp_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One of two gloo workers training the tiny run; saves its final weights and discriminator-free reports."""
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        session = LocalSession(checkpoint_root=str(Path(root) / f"checkpoints{rank}"), world_rank=rank,
                               world_size=world_size)
        model = gsda.train_gsda(tiny_config(batch_size=8), StripeContext(session, Path(root))).model
        torch.save({"model": model.state_dict(), "reports": session.reports}, Path(root) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_two_ddp_workers_end_with_identical_weights(tmp_path):
    # E/C are DDP-wrapped; the discriminators are averaged by hand (their loss goes through autograd.grad).
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    first, second = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2))
    for key, value in first["model"].items():
        if "running" not in key and "num_batches" not in key:  # BN statistics are per worker between broadcasts
            torch.testing.assert_close(value, second["model"][key], msg=f"ranks differ in {key}")
    assert [r["epoch"] for r in first["reports"]] == [1, 2, 3]
    assert first["reports"][-1]["loss"] == pytest.approx(second["reports"][-1]["loss"])  # all-reduced means
