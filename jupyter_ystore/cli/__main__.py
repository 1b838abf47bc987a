from jupyter_ystore.cli.main import main

main()
