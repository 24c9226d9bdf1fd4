from edgeward.cli.entry import main

main()
