from brandbot.cli import main

main()
