# The semiface image for GPU workers: CUDA runtime, Python 3.11, `make install-gpu` (torch with CUDA, the GPU faiss
# build, dlib's extra), the repository in /app, run as the non-root user `semiface`. docs/deployment.md has the
# Docker work pool that runs flow runs in it.
#   docker build -t semiface:latest .
#   docker run --rm --gpus all semiface:latest          # prints what torch and faiss see (make check-gpu)
# torch's pip wheel brings its own CUDA libraries (torch 2.14.1 from PyPI: CUDA 13.0, so an NVIDIA driver >= 580 on
# the host, semiface.devices.MIN_DRIVER) and the host needs the NVIDIA Container Toolkit; the base image's CUDA only
# has to be no newer than the driver.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 semiface
WORKDIR /app
COPY --chown=semiface:semiface . /app
USER semiface
RUN make install-gpu PYTHON=python3.11

# Flow runs start `prefect flow-run execute` (the Docker worker's command) from this venv. Relative run folders
# (runs/ms1m) are under /app/runs: mount the shared run storage there, and the data where the Variables say.
ENV PATH=/app/.venv/bin:$PATH
CMD ["python", "-m", "semiface.faiss_backend"]
