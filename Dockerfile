# The mind-recall image: the worker, the item writer, the producers and the training/export commands.
#   docker build -t mind-recall:0.1.0 .      (docker-compose.yml builds it for you)
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PaddlePaddle's CPU wheel links against libgomp (OpenMP), which the slim image lacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first (a layer that survives source edits): install the project once with empty
# packages, then the real sources without touching the dependencies again.
COPY pyproject.toml README.md ./
RUN mkdir -p mind_recall model worker producers cli \
    && touch mind_recall/__init__.py model/__init__.py worker/__init__.py producers/__init__.py cli/__init__.py \
    && pip install . \
    && pip uninstall -y mind-recall

COPY mind_recall ./mind_recall
COPY model ./model
COPY worker ./worker
COPY producers ./producers
COPY cli ./cli
COPY config ./config
RUN pip install --no-deps . && mind-recall config show >/dev/null

RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app:app /data
USER app
WORKDIR /data

# Inside a container /metrics must listen on every interface for Prometheus to reach it.
ENV MIND_RECALL__METRICS__HOST=0.0.0.0
EXPOSE 9464 8000

CMD ["mind-recall", "worker"]
