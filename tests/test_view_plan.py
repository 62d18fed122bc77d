"""ViewPlan, the one owner of the view layout, and what duplicate picks do end to end (they count once, as the 2021
sets did, in both view paths; before the plan, `--pick_weak 0 0` made the strong view an InfoNCE positive and the
DDM term vanished)."""

import pytest
from conftest import CPU_OVERRIDES, TINY_CROPS, logged_losses, run_script

from data_processing.view_plan import PlanError, ViewPlan, expand_crops

CROPS = expand_crops([1, 1], [32, 16], [0.2, 0.086], [1.0, 0.429])


def test_plan_sorts_and_deduplicates_picks_and_lays_out_every_view():
    plan = ViewPlan.build(expand_crops([2, 1], [32, 16], [0.2, 0.1], [1.0, 0.5]), [2, 0, 0], [1, 1], 5)
    assert (plan.pick_weak, plan.pick_strong, plan.num_weak, plan.num_strong) == ((0, 2), (1,), 2, 1)
    assert plan.sizes() == [32, 32, 16, 32]
    assert [strong for _, strong in plan.view_crops()] == [False, False, False, True]
    assert plan.split(["k", "w0", "w2", "s1"]) == ("k", ["w0", "w2"], ["s1"])
    assert ViewPlan.build(CROPS, [0], [1], 5, strong=False).sizes() == [32, 32]  # alpha 0: MoCo v2


def test_plan_refuses_picks_that_name_no_crop():
    with pytest.raises(PlanError) as err:
        ViewPlan.build(CROPS, [0], [1, 2, 5], 5)
    assert err.value.kind == "strong" and err.value.picks == [2, 5]
    with pytest.raises(ValueError):
        ViewPlan.build(CROPS, [], [1], 5)


@pytest.mark.parametrize("views", ["cpu", "gpu"])
def test_duplicate_picks_train_exactly_as_single_picks(views, image_folder, tmp_path):
    common = ["main_clsa.py", "--data", image_folder, *CPU_OVERRIDES, *TINY_CROPS, "--seed", "0", "--views", views,
              "--multiprocessing_distributed", "0"]
    ref = run_script([*common, "--run_dir", str(tmp_path / "ref")])
    dup = run_script([*common, "--run_dir", str(tmp_path / "dup"), "--pick_weak", "0", "0", "--pick_strong", "1", "1"])
    for r in (ref, dup):
        assert r.returncode == 0, r.stdout + r.stderr
        assert "contrastive loss count 1\tweak strong loss count 1" in r.stdout
        assert "views per image: key 32px, weak [32], strong [16]" in r.stdout
    assert logged_losses(dup.stdout) == logged_losses(ref.stdout) and len(logged_losses(ref.stdout)) == 2
