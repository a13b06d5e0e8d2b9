FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY hpo hpo
COPY service service
COPY studies studies
RUN pip install --no-cache-dir .
