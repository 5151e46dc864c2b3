from lightning_l2o.cli import main

if __name__ == "__main__":
    main()
