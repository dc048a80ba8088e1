"""`tracelake tune`: Optuna trials through the same train function, a study that resumes, a config `train` takes."""

from __future__ import annotations

import pytest
import yaml
from training_frames import small_sequences, write_training_set

from spark_jobs import tune
from tracelake.config import load_settings
from tracelake.runs import job_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(test_settings, tmp_path_factory):
    lake = tmp_path_factory.mktemp("tune_lake")
    return small_sequences(test_settings.model_copy(update={"lake_root": str(lake)}))


def test_trials_resume_and_the_best_configuration_is_a_config_file(spark, settings, tmp_path):
    write_training_set(spark, settings, "tune-set", n_rows=300, seed=3)
    with job_run("tune", settings=settings, spark=spark) as run:
        first = tune.execute(run, "tune-set", trials=2, study="s", epochs=2, num_processes=1)
    assert sum(first["trials"].values()) == 2 and first["resumed_from"] == 0
    with job_run("tune", settings=settings, spark=spark) as run:
        again = tune.execute(
            run, "tune-set", trials=3, study="s", epochs=2, num_processes=1, out=str(tmp_path / "best.yaml")
        )
    # The second run found the first two trials in the journal under the lake and added one.
    assert again["resumed_from"] == 2 and sum(again["trials"].values()) == 3
    assert again["storage"].startswith(settings.lake_root)
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert set(best["training"]) == set(again["best_params"])
    loaded = load_settings(tmp_path / "best.yaml")
    assert loaded.training.hidden_size == again["best_params"]["hidden_size"]
    assert 0.0 <= again["best_val_macro_pr_auc"] <= 1.0


def test_reporter_pickles_and_the_search_space_names_real_settings():
    import pickle

    import optuna

    reporter = tune.TrialReporter("/tmp/lake", "s", 1, 0)
    assert pickle.loads(pickle.dumps(reporter)) == reporter
    trial = optuna.trial.FixedTrial(
        {
            "learning_rate": 1e-3,
            "hidden_size": 64,
            "num_layers": 1,
            "dropout": 0.1,
            "weight_decay": 1e-5,
            "batch_size": 512,
            "pos_weight_cap": 30.0,
        }
    )
    params = tune.search_space(trial)
    from tracelake.config import TrainingSettings

    assert TrainingSettings.model_validate(params).hidden_size == 64
