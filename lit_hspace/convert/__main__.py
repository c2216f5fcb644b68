from lit_hspace.convert import main

main()
