from setuptools import find_packages, setup

setup(
    name="hafsvg",
    version="0.1.0",
    description="SVG-LP / HAF-SVG stochastic video prediction with fused Triton and C++/CUDA kernels",
    packages=find_packages(include=["hafsvg", "hafsvg.*", "hafsvg_kernels", "hafsvg_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "pillow", "tqdm"],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest", "pytest-benchmark", "scikit-image", "triton>=3.0", "ruff"],
    },
    entry_points={"console_scripts": ["hafsvg=hafsvg.cli:main"]},
)
