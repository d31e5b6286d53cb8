# limpet container image: build with cargo in a full Rust image, run the binary alone in a small non-root image.
#   docker build -t limpet .
#   docker run -p 8080:8080 -v "$PWD/config/limpet.toml:/etc/limpet/limpet.toml:ro" limpet
# (a config used in a container listens on 0.0.0.0; config/limpet.docker.toml is the one docker-compose.yml uses)

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The image needs no debug info; the repository's release profile keeps some for profiling.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin limpet \
 && cp target/release/limpet /usr/local/bin/limpet

# distroless/cc: glibc, libgcc and CA certificates, no shell; the nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/limpet /usr/local/bin/limpet
COPY config/limpet.docker.toml /etc/limpet/limpet.toml
USER nonroot:nonroot
EXPOSE 8080 9100
ENTRYPOINT ["/usr/local/bin/limpet"]
CMD ["-c", "/etc/limpet/limpet.toml"]
