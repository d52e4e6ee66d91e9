"""End-to-end demo of file_dataset on a local S3 server.

Starts an embedded S3 server (moto, on 127.0.0.1), writes a few small synthetic 3D
``.mha`` images with SimpleITK, uploads them, then runs the design notes' usages:

1. ``reader(row).into_temp_dir()`` and a local resample;
2. ``write_files`` to S3 and to a local folder;
3. a ``Pipeline`` that really resamples every image, chained into a second one;
4. ``into_blob_table`` and ``into_size_table``;
5. with Ray installed: ``file_dataset.ray.read_file_dataset`` and the Pipeline inside
   ``map_batches`` on a local Ray.

Run it with ``uv run python examples/demo.py`` (see the README's first command).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

# Keep the demo sealed from any real AWS configuration on this machine.
for _name in [n for n in os.environ if n.startswith("AWS_")]:
    del os.environ[_name]
os.environ.update(
    AWS_CONFIG_FILE="/dev/null",
    AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    AWS_EC2_METADATA_DISABLED="true",
)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import SimpleITK as sitk  # noqa: E402

import file_dataset  # noqa: E402
from file_dataset.testing import LocalS3Server  # noqa: E402

N_IMAGES = 6
TARGET_SPACING = (2.0, 2.0, 2.0)


def make_image(seed: int) -> sitk.Image:
    """A synthetic 3D volume: a noisy bright sphere, 1 x 1 x 2 mm voxels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:24, 0:48, 0:48]
    radius = 8 + seed
    sphere = ((x - 24) ** 2 + (y - 24) ** 2 + (2 * (z - 12)) ** 2) < radius**2
    volume = (sphere * 100 + rng.normal(0, 5, sphere.shape)).astype(np.float32)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def resample_local_image_file(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    """The user's function: resample ``image.mha`` to 2 mm isotropic voxels."""
    image = sitk.ReadImage(str(input_dir / "image.mha"))
    size = [
        round(n * spacing / target)
        for n, spacing, target in zip(
            image.GetSize(), image.GetSpacing(), TARGET_SPACING, strict=True
        )
    ]
    resampled = sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        TARGET_SPACING,
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )
    output = output_dir / "output.mha"
    sitk.WriteImage(resampled, str(output))
    return {"output.mha": output}


def threshold_mask(input_dir: Path, output_dir: Path) -> dict[str, Path]:
    """A second step, fed by the first Pipeline's output: a binary mask."""
    image = sitk.ReadImage(str(input_dir / "output.mha"))
    mask = sitk.BinaryThreshold(image, lowerThreshold=50.0, upperThreshold=1e9)
    output = output_dir / "mask.mha"
    sitk.WriteImage(mask, str(output))
    return {"mask.mha": output}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    with LocalS3Server() as s3, tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        bucket = s3.create_bucket("demo-bucket")
        options = s3.options()
        print(f"local S3 server at {s3.endpoint_url}, bucket {bucket!r}")

        # Make and upload the inputs with write_files (local files -> s3://.../<id>/<name>).
        rows = []
        for i in range(N_IMAGES):
            path = work_dir / f"image{i}.mha"
            sitk.WriteImage(make_image(i), str(path))
            written = file_dataset.write_files(
                {"image.mha": path}, f"s3://{bucket}/raw/", id=str(i), options=options
            )
            rows.append({"id": str(i), "image.mha": written["image.mha"]})
        files = pd.DataFrame(rows)
        print(f"\nuploaded {len(files)} images:\n{files.to_string(index=False)}")

        # Usage 1: one row into a temporary directory, processed with ordinary Python.
        row = {"image.mha": files.loc[0, "image.mha"]}
        with file_dataset.reader(row, options=options).into_temp_dir() as tmp:
            out = resample_local_image_file(tmp, tmp)
            size = sitk.ReadImage(str(out["output.mha"])).GetSize()
            print(f"\nusage 1: {sorted(p.name for p in tmp.iterdir())} in {tmp}; resampled {size}")

        # Usage 2: write local files back, to S3 and to a local folder.
        local_file = work_dir / "resampled_image.mha"
        sitk.WriteImage(sitk.ReadImage(str(work_dir / "image0.mha")), str(local_file))
        to_s3 = file_dataset.write_files(
            {"resampled_image.mha": local_file}, f"s3://{bucket}/resampled/", "1", options
        )
        to_local = file_dataset.write_files(
            {"resampled_image.mha": local_file}, work_dir / "resampled", "1", options
        )
        print(f"usage 2: {to_s3}\n         {to_local}")

        # Usage 3: a Pipeline per row (download -> fn -> upload), then a second one.
        pipeline = file_dataset.Pipeline(
            fn=resample_local_image_file,
            write_options={"into_path": f"s3://{bucket}/resampled/"},
            options=options,
        )
        resampled = pipeline(files)
        masks = file_dataset.Pipeline(
            threshold_mask, write_options={"into_path": f"s3://{bucket}/masks/"}, options=options
        )(resampled)
        print(f"\nusage 3: Pipeline output:\n{resampled.to_string(index=False)}")
        print(f"chained Pipeline output:\n{masks.to_string(index=False)}")

        # Usage 4: blobs and sizes in memory.
        blobs = file_dataset.reader(files, options=options).into_blob_table()
        sizes = file_dataset.reader(files, options=options).into_size_table()
        print(
            f"\nusage 4: blob table {blobs.num_rows} rows x {blobs.num_columns} columns, "
            f"{blobs.nbytes:,} bytes; schema: {blobs.schema.types}"
        )
        print(f"size table {sizes.shape}: {sizes.column('image.mha').to_pylist()}")
        assert sizes.column("image.mha").to_pylist() == [
            len(blob) for blob in blobs.column("image.mha").to_pylist()
        ]

        run_ray_demo(files, options, bucket)
        print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")


def run_ray_demo(files: pd.DataFrame, options: file_dataset.Options, bucket: str) -> None:
    """Usage 5: the same data through Ray Data, on a local Ray."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user cluster
    # Under `uv run`, Ray would package this folder and start every worker through
    # `uv run` as well: 10 s more per Ray Data job here, and not what a deployed
    # cluster does. The workers use this interpreter, which has file_dataset installed.
    # (Read when ray is imported, so it is set first.)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray

        import file_dataset.ray as fd_ray
    except ImportError:
        print("\nRay is not installed (pip install 'file-dataset[ray]'): skipping the Ray demo")
        return
    logging.getLogger("ray").setLevel(logging.WARNING)
    ray.init(
        address="local",  # a Ray of its own, never one already running on the machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_auto_log_stats = False
    try:
        dataset = fd_ray.read_file_dataset(files, batch_size=2, options=options)
        table = dataset.to_arrow_refs()
        blobs = ray.get(table)
        rows = sum(t.num_rows for t in blobs)
        total = sum(t.column("image.mha").nbytes for t in blobs)
        print(
            f"\nray: read_file_dataset -> {rows} rows in {len(blobs)} blocks, "
            f"{total:,} bytes of blobs; schema {dataset.schema()}"
        )
        outputs = (
            # Two blocks, so two Pipeline tasks run at once. (from_pandas's
            # override_num_blocks does not work with pandas 3 in Ray 2.60.)
            ray.data.from_pandas([files.iloc[: len(files) // 2], files.iloc[len(files) // 2 :]])
            .map_batches(
                file_dataset.Pipeline(
                    resample_local_image_file,
                    write_options={"into_path": f"s3://{bucket}/ray-resampled/"},
                    options=options,
                ),
                batch_format="pandas",
                batch_size=2,
                compute=ray.data.TaskPoolStrategy(size=2),
            )
            .to_pandas()
            .sort_values("id")
        )
        print(f"ray: Pipeline in map_batches wrote:\n{outputs.to_string(index=False)}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
