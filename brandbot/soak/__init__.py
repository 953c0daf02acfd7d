"""`brandbot soak`: load with faults against real processes, counted where the users look.

A scenario starts a Redis with append-only persistence (an embedded Valkey), the Slack and Discord
emulators, two or more workers on the tiny model and one process of each front-end; asks many questions
at once from many people, through both chats; injects one fault while the answers stream; and then
counts, per question, the finished messages the bots left in the emulators' message stores — not what
Redis says. The promise checked: every question ends with exactly one complete answer or one clear
error, none lost, none duplicated, and the processes recover without a hand (the soak restarts a process
that exits, as Docker Compose's `restart:` policy does, and nothing else).

- `brandbot.soak.stack`: the processes and the emulators, and their restart policy;
- `brandbot.soak.sight`: what a person sees of one question (answer, error, still writing);
- `brandbot.soak.load`: the people asking, and the watch over what they see;
- `brandbot.soak.faults`: the faults, by name;
- `brandbot.soak.tally`: the counts and the table;
- `brandbot.soak.scenario`: one scenario per fault, run in turn.
"""
