# syntax=docker/dockerfile:1
# memos-proxy: OpenAI-compatible proxy with memory.
#   docker build -t memos-proxy .
#   docker run -p 8080:8080 -v memos-data:/data -e MEMOS_UPSTREAM_API_KEY=sk-... memos-proxy
#   docker run --rm -v memos-data:/data memos-proxy keys create --tenant acme --role app
# CPU-only torch wheels (a much smaller image):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t memos-proxy .

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes): the exact pins of constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN mkdir -p proxy memos \
    && touch proxy/__init__.py memos/__init__.py \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -c constraints.txt . \
    && pip uninstall -y memos-proxy
COPY proxy ./proxy
COPY memos ./memos
RUN pip install --no-deps -c constraints.txt . \
    && python -m compileall -q /opt/venv/lib

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 memos \
    && useradd --system --uid 10001 --gid memos --home-dir /home/memos --create-home --shell /usr/sbin/nologin memos \
    && mkdir -p /data \
    && chown memos:memos /data
COPY --from=build /opt/venv /opt/venv
COPY policies /app/policies
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MEMOS_DATA_DIR=/data \
    MEMOS_HOST=0.0.0.0 \
    MEMOS_PORT=8080 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
WORKDIR /app
# Memory, keys, audit, vectors and the master key file live here: mount a volume.
VOLUME ["/data"]
USER memos
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MEMOS_PORT', '8080') + '/healthz', timeout=2)"]
ENTRYPOINT ["memos-proxy"]
CMD ["serve"]
