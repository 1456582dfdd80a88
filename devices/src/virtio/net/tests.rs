//! Tests of the virtio-net device (see the task given to the helper).
