from lit_hspace.cli import main

main()
