# syntax=docker/dockerfile:1
# One image with every Portcullis binary: the operator (also the app pod's known-proxies
# init step), the edge proxy, the transcoder, the ffmpeg wrapper (the app pod's
# ffmpeg-wrapper init step copies it out of this image) and portcullis-backup (the backup
# CronJob and restore Jobs).
#   docker build -t ghcr.io/portcullis-dev/portcullis:0.1.0 .
# The transcoder also needs ffmpeg next to it; the `transcoder` target adds the binary to the
# Jellyfin image, whose jellyfin-ffmpeg (NVENC/NVDEC, CUDA filters) is where
# portcullis-transcoder looks by default (/usr/lib/jellyfin-ffmpeg/ffmpeg):
#   docker build --target transcoder -t ghcr.io/portcullis-dev/portcullis-transcoder:0.1.0 .

FROM docker.io/library/rust:1.95.0-bookworm AS build
# Pingora builds its own OpenSSL and zlib-ng: cmake next to the toolchain the image has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p portcullis-operator -p portcullis-proxy -p portcullis-transcoder \
       -p portcullis-backup \
 && mkdir -p /out \
 && cp target/release/portcullis-operator target/release/portcullis-proxy \
       target/release/portcullis-transcoder target/release/portcullis-ffmpeg \
       target/release/portcullis-backup /out/

# The transcoder with jellyfin-ffmpeg. The operator's default image is the last stage (what
# a plain `docker build` makes), so a MediaServer sets `transcoder.image` to this one until
# the operator defaults to it (transcoder/README.md).
FROM docker.io/jellyfin/jellyfin:10.10.7 AS transcoder
COPY --from=build /out/portcullis-transcoder /out/portcullis-ffmpeg /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["portcullis-transcoder"]

# glibc, libgcc and CA certificates, no shell; the nonroot user (65532) the operator's pod
# security contexts expect.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["portcullis-operator"]
CMD ["run"]
