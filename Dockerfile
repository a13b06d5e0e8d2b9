FROM python:3.11-slim
WORKDIR /app
# Pass --build-arg TORCH_INDEX=<PyTorch's CPU wheel index> for a much smaller CPU-only image.
ARG TORCH_INDEX=
RUN pip install --no-cache-dir torch==2.13.0 ${TORCH_INDEX:+--index-url $TORCH_INDEX}
COPY pyproject.toml README.md ./
COPY hpo hpo
COPY service service
COPY studies studies
RUN pip install --no-cache-dir .
