from necropool.cli import main

main()
