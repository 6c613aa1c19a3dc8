from cnnlab.cli import main

main()
