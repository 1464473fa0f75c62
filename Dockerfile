# syntax=docker/dockerfile:1
# One image with every Portcullis binary: the operator (also the app pod's known-proxies
# init step) and the edge proxy. The transcoder binaries join when they exist.
#   docker build -t ghcr.io/portcullis-dev/portcullis:0.1.0 .

FROM docker.io/library/rust:1.95.0-bookworm AS build
# Pingora builds its own OpenSSL and zlib-ng: cmake next to the toolchain the image has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p portcullis-operator -p portcullis-proxy \
 && mkdir -p /out \
 && cp target/release/portcullis-operator target/release/portcullis-proxy /out/

# glibc, libgcc and CA certificates, no shell; the nonroot user (65532) the operator's pod
# security contexts expect.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["portcullis-operator"]
CMD ["run"]
