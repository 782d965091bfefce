from stagebox.cli import main

main()
