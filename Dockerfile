# syntax=docker/dockerfile:1
# One image, three entry points: chat-server (gRPC, 8001; metrics 9464), chat-bridge (HTTP,
# 8080) and chat-worker (metrics 9465); the container's command picks one. No MongoDB, Redis
# or Kafka inside: the `embedded` extra (the development stack) is not installed.
# Checked in CI (tests/unit/test_deploy_files.py); not built here: see docs/operations.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The web chat widget, compiled from TypeScript (clients/web-widget).
FROM node:22-bookworm-slim AS widget
WORKDIR /widget
COPY clients/web-widget/package.json clients/web-widget/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY clients/web-widget/ ./
RUN npm run --silent build

# The service and its pinned dependencies, in a virtual environment copied whole below.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/chat
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY gen/python/ gen/python/
COPY server/ server/
COPY webhook_bridge/ webhook_bridge/
COPY chat_client/ chat_client/
COPY devstack/ devstack/
# chat-dev is removed: it starts the embedded servers, which are not in this image.
RUN /opt/chat/bin/pip install -c constraints.txt . && rm /opt/chat/bin/chat-dev

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --home-dir /nonexistent --no-create-home chat
COPY --from=build /opt/chat /opt/chat
COPY --from=widget /widget/dist/ /opt/chat/widget/
ENV PATH=/opt/chat/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHAT_LOG_FORMAT=json \
    CHAT_WEB_WIDGET_DIR=/opt/chat/widget
WORKDIR /tmp
USER 10001:10001
EXPOSE 8001 8080 9464 9465
CMD ["chat-server"]
