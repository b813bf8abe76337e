from ethml.cli import main

main()
