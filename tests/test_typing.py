"""The public API as a type checker sees it, in a user's code checked by ``mypy --strict``."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

USER_CODE = """
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd

import file_dataset
from file_dataset import Options, Pipeline

# the design notes' output type of fn
ResampledOutput = TypedDict("ResampledOutput", {"output.mha": Path})


def resample(input_dir: Path, output_dir: Path) -> ResampledOutput:
    return {"output.mha": output_dir / "output.mha"}


def run(frame: pd.DataFrame, options: Options) -> None:
    outputs = resample(Path("in"), Path("out"))
    file_dataset.write_files(outputs, "s3://bucket/results", id="7", options=options)
    Pipeline(resample, {"into_path": "s3://bucket/results"}, options)(frame)
    file_dataset.reader(row=frame, options=options).into_size_table()
    file_dataset.reader(frame.iloc[0], options).into_blob_table()
    Options.default(max_concurrency=8, transport="boto3").replace(retry_mode="standard")
    options.replace(max_concurency=4)  # line 25: a misspelt setting
    Options(transport="obstor")  # line 26: an unknown transport
    file_dataset.write_files({"o": Path("o")}, "s3://bucket/r", np.int64(7), options)
    try:
        file_dataset.reader(frame, options).into_blob_table()
    except file_dataset.TransferError as e:
        print(e.strerror.upper(), e.filename.upper())
    # a single row gives a dict (or None), a Ray NumPy batch a DataFrame
    pipeline = Pipeline(resample, {"into_path": "s3://bucket/results"}, options)
    for row in ({"id": 7, "image.mha": "s3://b/k"}, frame.iloc[0]):
        one = pipeline(row)
        if one is not None:
            print(one["output.mha"].upper(), [name.upper() for name in one])
    batch = {"id": np.array([7]), "image.mha": np.array(["s3://b/k"])}
    print(pipeline(batch).columns)
    import file_dataset.ray

    file_dataset.ray.read_file_datset(frame, 4)  # helper-121: taken for Any
"""
MISSPELT_LINE = "    file_dataset.ray.read_file_datset(frame, 4)  # helper-121: taken for Any"


def test_user_code_type_checks_and_misspelt_settings_are_caught(tmp_path: Path) -> None:
    """Before: write_files refused the notes' TypedDict output, reader(row=DataFrame) and
    reader(Series) were refused though they work, and misspelt settings passed."""
    source = tmp_path / "user.py"
    # The folder's name at the end (lines 25 and 26 keep their numbers): mypy 2.4
    # reused the cached errors of the same text checked under another path.
    source.write_text(textwrap.dedent(USER_CODE).lstrip() + f"# {tmp_path}\n")
    # the project's own cache (.mypy_cache, warm after `mypy src`) saves ~10 s of stubs
    out, err, _ = api.run(["--strict", "--no-error-summary", str(source)])
    errors = sorted(line.split(": error: ")[0] for line in out.splitlines() if ": error: " in line)
    misspelt = source.read_text().splitlines().index(MISSPELT_LINE) + 1
    assert errors == sorted([f"{source}:25", f"{source}:26", f"{source}:{misspelt}"]), out + err
    assert 'Module has no attribute "read_file_datset"' in out
    assert 'Unexpected keyword argument "max_concurency" for "replace"' in out
    assert 'Argument "transport" to "Options" has incompatible type "Literal[\'obstor\']"' in out
