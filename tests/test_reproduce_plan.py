"""experiments/reproduce.py: the arms it runs and the main_clsa.py flags each one gets (no training here)."""

from __future__ import annotations

from experiments.reproduce import arms, build_parser


def _flag(argv: list[str], name: str) -> list[str]:
    i = argv.index(name)
    out = []
    for value in argv[i + 1:]:
        if value.startswith("--"):
            break
        out.append(value)
    return out


def test_arms_order_and_flags():
    plan = arms(7, [0, 1], [0, 1, 2], {"lr": 0.1, "cos": 3, "warmup_iters": 100}, lr_multi=0.02)
    assert [(name, seed) for name, _, seed in plan] == [
        ("random_init", 0), ("moco_v2", 0), ("clsa_single", 0), ("clsa_multi", 0), ("random_init", 1),
        ("random_init", 2), ("moco_v2", 1), ("clsa_single", 1)]
    recipes = {(name, seed): r for name, r, seed in plan}
    assert recipes[("random_init", 0)] is None
    for (name, seed), r in recipes.items():
        if r is None:
            continue
        argv = r.argv("DATA", "RUN")
        assert _flag(argv, "--epochs") == ["7"] and _flag(argv, "--seed") == [str(seed)]
        assert _flag(argv, "--cos") == ["3"] and _flag(argv, "--warmup_iters") == ["100"]
        assert _flag(argv, "--lr") == (["0.02"] if name == "clsa_multi" else ["0.1"])
        assert _flag(argv, "--alpha") == (["0.0"] if name == "moco_v2" else ["1.0"])
        crops = _flag(argv, "--size_crops")
        assert crops == (["32", "28", "24", "20", "16"] if name == "clsa_multi" else ["32", "16"])


def test_parser_defaults_are_the_documented_run():
    args = build_parser().parse_args([])
    assert (args.epochs, args.subset, args.lr, args.lr_multi, args.cos, args.warmup_iters) == (7, 0, 0.1, 0.02, 3, 100)


def test_seeded_plan_with_the_symmetric_arm():
    plan = arms(7, [1, 2], [0, 1, 2], {"lr": 0.1}, include=("moco_v2", "clsa_single", "clsa_sym"))
    assert [(name, seed) for name, _, seed in plan] == [
        ("random_init", 0), ("moco_v2", 1), ("clsa_single", 1), ("clsa_sym", 1), ("random_init", 1),
        ("random_init", 2), ("moco_v2", 2), ("clsa_single", 2), ("clsa_sym", 2)]
    sym = [r for name, r, _ in plan if name == "clsa_sym"]
    assert all(_flag(r.argv("DATA", "RUN"), "--sym") == ["1"] for r in sym)
    assert all("--sym" not in r.argv("DATA", "RUN") for name, r, _ in plan if name in ("moco_v2", "clsa_single"))


def test_ablation_arms_differ_from_clsa_single_in_their_factor_only():
    """The 2 x 2 design: each ablation arm's argv is clsa_single's plus exactly its own flags."""
    plan = arms(7, [0], [0], {"lr": 0.1, "cos": 3, "warmup_iters": 100},
                include=("clsa_single", "clsa_aug0", "strong_infonce", "smallcrop_infonce"))
    argv = {name: r.argv("DATA", "RUN") for name, r, _ in plan if r is not None}
    base = argv["clsa_single"]
    assert "--strong_loss" not in base and _flag(base, "--aug_times") == ["5"]
    expected = {"clsa_aug0": {"--aug_times": ["0"]}, "strong_infonce": {"--strong_loss": ["infonce"]},
                "smallcrop_infonce": {"--aug_times": ["0"], "--strong_loss": ["infonce"]}}
    for name, changed in expected.items():
        flags = {a for a in argv[name] if a.startswith("--")} | {a for a in base if a.startswith("--")}
        diff = {f: _flag(argv[name], f) for f in flags if f not in base or f not in argv[name]
                or _flag(argv[name], f) != _flag(base, f)}
        assert diff == changed, (name, diff)
