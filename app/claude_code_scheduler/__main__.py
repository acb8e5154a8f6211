from claude_code_scheduler.cli import main

main()
