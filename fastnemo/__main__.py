from fastnemo.cli import main

main()
