"""The operator's side of the bus from a terminal: submit, events, nodes."""
