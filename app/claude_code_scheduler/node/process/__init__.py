"""A run's child process: supervising it (supervisor), knowing the Claude CLI
(claude), the environment and folders it gets (environment), what it leaves
behind (reaper), and the stand-in CLI of mock mode (mockcli)."""
