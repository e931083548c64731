"""--validation-folders: the validation split by speaker folder, and its refusals."""

from pathlib import Path

import pytest

from data_prep.config import OutputOptions, PrepConfig, PrepConfigError
from data_prep.writer import assign_splits, check_validation_folders

NAMES = ["anna/1.wav", "anna/2.wav", "ben/1.wav", "carla/x/1.wav", "annabel/1.wav"]


def test_held_out_folders_are_the_validation_split():
    splits = assign_splits(NAMES, 0.5, seed=0, validation_folders=("anna", "carla/"))
    assert {n for n, s in splits.items() if s == "validation"} == {"anna/1.wav", "anna/2.wav", "carla/x/1.wav"}
    assert splits["annabel/1.wav"] == "train"  # a folder, not a name prefix


def test_a_folder_without_recordings_or_without_training_left_is_refused():
    with pytest.raises(PrepConfigError, match=r"--validation-folders dora: no recording lies in that folder"):
        check_validation_folders(NAMES, ("anna", "dora"))
    with pytest.raises(PrepConfigError, match="holds every kept recording"):
        assign_splits(["anna/1.wav", "ben/1.wav"], 0.0, 0, ("anna", "ben"))


def test_an_empty_folder_name_is_refused():
    config = PrepConfig(input=Path("in"), output=Path("out"),
                        out=OutputOptions(validation_folders=("anna", " ")))
    with pytest.raises(PrepConfigError, match="--validation-folders needs folder names"):
        config.validate()
