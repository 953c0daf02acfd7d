"""Front-ends: the only tier that holds platform tokens. They ack fast, enqueue, and relay replies."""
