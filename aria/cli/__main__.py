from aria.cli.main import main

main()
