"""The worker node. `main` puts it together, `worker` runs the poll loop,
heartbeats and the shutdown order, `messages` decides what happens to every
message, `runs` carries one run from TaskStarted to its terminal event."""
