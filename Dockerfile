# The chat server image used by docker-compose.yml. Runtime dependencies only, pinned by
# requirements.txt (used as constraints, so test and lint tools are not installed).
FROM python:3.11.11-slim-bookworm
WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
# The package and its page: the wheel carries templates/ and static/ inside chatserver/.
COPY chatserver ./chatserver
COPY templates ./templates
COPY static ./static
RUN pip install --no-cache-dir -c requirements.txt . \
 && useradd --system --uid 10001 chat
USER chat
ENV CHAT_HOST=0.0.0.0 PYTHONUNBUFFERED=1
CMD ["python", "-m", "chatserver"]
