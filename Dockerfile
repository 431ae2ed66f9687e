FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY notifier ./notifier
RUN pip install . && useradd --system --uid 10001 notifier
USER notifier
ENV DCS_NOTIFIER_CONFIG=/etc/dcs-notifier/config.yaml
ENTRYPOINT ["dcs-notifier"]
CMD ["run"]
