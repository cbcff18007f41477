# One image for every cardlink service (`cardlink serve <service>`), built without the embedded
# development broker and with TLS/SASL support for a production Kafka cluster.
#
#   docker build -t cardlink .
#   docker run cardlink serve subscription --help

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake perl && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cardlink --no-default-features --features kafka-tls \
    && cp target/release/cardlink /usr/local/bin/cardlink

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home cardlink
COPY --from=build /usr/local/bin/cardlink /usr/local/bin/cardlink
USER 10001
ENTRYPOINT ["/usr/local/bin/cardlink"]
CMD ["--help"]
