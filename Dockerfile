# One image for every Cohort service (ledger, SuperLink, SuperNodes, coordinator); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e . \
    && useradd --create-home cohort
USER cohort
ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
