from lit_hspace.report import main

main()
