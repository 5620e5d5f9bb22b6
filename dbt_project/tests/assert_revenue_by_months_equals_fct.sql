-- Reconciliation: the monthly mart's revenue adds up to the fact's amount, in total and per month.
with

facts as (
    select * from {{ ref('fct_transactions') }}
),

dates as (
    select * from {{ ref('dim_dates') }}
),

months as (
    select * from {{ ref('dm_revenue_by_months') }}
),

-- summed per day first, so the join to the calendar reads a few hundred rows, not every line
fact_by_day as (
    select
        date_key,
        sum(amount) as amount
    from facts
    group by date_key
),

fact_by_month as (
    select
        dates.month_start,
        sum(fact_by_day.amount) as amount
    from fact_by_day
    left join dates
        on fact_by_day.date_key = dates.date_key
    group by dates.month_start
),

compared as (
    select
        coalesce(fact_by_month.month_start, months.month_start) as month_start,
        coalesce(fact_by_month.amount, 0) as fact_amount,
        coalesce(months.revenue, 0) as mart_revenue
    from fact_by_month
    full outer join months
        on fact_by_month.month_start = months.month_start
),

final as (
    select * from compared
    where fact_amount <> mart_revenue
)

select * from final
