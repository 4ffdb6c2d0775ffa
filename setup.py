from setuptools import find_packages, setup

CONSOLE_SCRIPTS = {
    "dgcf_make_example_dataset": "dgcf_auto.cli.make_example_dataset:main",
    "dgcf_convert_synthrad2023": "dgcf_auto.cli.convert_synthrad2023:main",
    "dgcf_plan_and_preprocess": "dgcf_auto.cli.plan_and_preprocess:main",
    "dgcf_train": "dgcf_auto.cli.train:main",
    "dgcf_predict": "dgcf_auto.cli.predict:main",
    "dgcf_evaluate": "dgcf_auto.cli.evaluate:main",
    "dgcf_compare": "dgcf_auto.cli.compare:main",
    "dgcf_ensemble": "dgcf_auto.cli.ensemble:main",
    "dgcf_find_best_configuration": "dgcf_auto.cli.find_best_configuration:main",
    "dgcf_export_model_to_zip": "dgcf_auto.cli.export_model_to_zip:main",
    "dgcf_install_model_from_zip": "dgcf_auto.cli.install_model_from_zip:main",
    "dgcf_visualize": "dgcf_auto.cli.visualize:main",
    "dgcf_demo": "dgcf_auto.cli.demo:main",
    "dgcf_import_reference_checkpoint": "dgcf_auto.cli.import_reference_checkpoint:main",
    "dgcf_dicom_node": "dgcf_auto.cli.dicom_node:main",
}

DOSE = ["pyRadPlan==0.5.0", "pydantic<2.12", "pymedphys>=0.41", "numba"]  # dgcf_evaluate --dose

setup(
    name="dgcf_auto",
    version="0.1.0",
    description="Self-configuring synthetic CT from MRI/CBCT with the DINOv3-guided cross-fusion network (DGCF)",
    packages=find_packages(include=["dgcf_auto", "dgcf_auto.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3",
        "torchvision",
        "timm>=1.0.20",  # vit_base_patch16_dinov3
        "safetensors",
        "SimpleITK>=2.3",
        "pydicom>=2.4",  # DICOM series output (and header scanning of DICOM input)
        "nibabel>=5",  # NIfTI voxel checks: raises on short voxel blocks and cut gzip, keeps NaN/inf
        "batchgenerators>=0.25",
        "dynamic-network-architectures>=0.4",  # the 3d_fullres U-Nets (PlainConvUNet, ResidualEncoderUNet)
        "pytorch-msssim>=1.0",
        "totalsegmentator>=2.4",
        "numpy",
        "scipy",
        "tqdm",
        "matplotlib",
        "jsonschema>=4.18",  # files read back (summaries, manifests, provenance) are checked against schemas
        "segmentation-models-pytorch>=0.6",  # UNet++ with a ResNet-34 encoder (IMPACT-Synth's 2.5D network)
        "requests",  # dgcf_dicom_node talks to Orthanc's REST API
    ],
    extras_require={
        # pyRadPlan 0.5 fails in its serializers with pydantic >= 2.12 (PydanticSerializationError)
        "dose": DOSE,
        "tensorboard": ["tensorboard"],  # dgcf_train --tensorboard
        # nnunetv2: the test oracle of the 3d_fullres planner and sliding window (and benchmarks/sliding_window_3d.py)
        "test": ["pytest>=7", "pytest-timeout", "scikit-image", "psutil", "tensorboard", "ruff", "mypy", "nnunetv2>=2.5",
                 *DOSE],
        "mutation": ["cosmic-ray>=8.3", "coverage>=7", "pytest-cov>=5"],  # benchmarks/mutation.py
    },
    entry_points={"console_scripts": [f"{name}={target}" for name, target in CONSOLE_SCRIPTS.items()]},
)
