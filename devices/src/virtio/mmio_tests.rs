//! Tests of the virtio-mmio transport.
